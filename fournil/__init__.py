"""fournil: bake truly bilingual French/English language models the CroissantLLM way (arXiv 2402.00786).

Stages, in the order data flows through them: corpus → tokenizer → model → train → eval → infer.
A stage imports only earlier stages.
"""

__version__ = "0.1.0"
