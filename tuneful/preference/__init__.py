"""What the preference trainers share: pairs and their batches, layouts, the reference policy, pair losses.
Floor 3: may import tokenization, models, data, templates, config; never train."""
