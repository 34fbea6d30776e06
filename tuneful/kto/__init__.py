"""The KTO trainer: unpaired replies labelled desirable or undesirable, against a reference policy.
Floor 4: may import train, preference, infer and below; never another trainer."""
