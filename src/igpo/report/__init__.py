"""What a run leaves behind for people: trajectory samples, TensorBoard scalars, and the HTML report.

- `records`: a scored trajectory as a JSON-able record (per turn: text, tool call, passages, belief, IG, advantage).
- `runlog`: the run-folder writer the trainer calls each step (`samples.jsonl`, TensorBoard event files).
- `build`: `build_report(run_dir)`, one self-contained HTML file (plots embedded, no network).
"""
