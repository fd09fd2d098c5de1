"""QA sets and corpora: loaders for the Search-R1/IGPO parquet and JSONL formats, and the VitalFactbook builder."""
from igpo.data.loaders import DataError, Passage, QAExample, load_corpus, load_qa

__all__ = ["DataError", "Passage", "QAExample", "load_corpus", "load_qa"]
