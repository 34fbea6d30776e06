"""The one training core every trainer runs on: settings shared by all (``config``), set-up pieces
(``components``, ``model``), the epoch plan (``plan``), checkpoints, metrics and the output folder, and
the loop (``loop.Trainer``: setup → train → save). A trainer (``tuneful.sft``, ``tuneful.dpo``) adds
only its data preparation, its loss over a micro-batch and its metrics."""
