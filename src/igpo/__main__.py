from igpo.cli import main

main()
