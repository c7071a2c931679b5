"""`amoe teachers demo`: two small domain experts trained in the real transformers classes (stage.py), from labelled
image folders (folders.py), as classifiers (classifier.py)."""
