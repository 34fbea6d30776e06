"""Stage two of the data pipeline: a validated conversation → token ids + train masks for one tokenizer and
template (``masking``), every check before training (``preflight``), and what ``tuneful data inspect`` shows
(``view``). Knows conversations, templates and tokenizers; no model."""
