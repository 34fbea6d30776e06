"""The DPO trainer and its variants (robust, IPO, hinge, SimPO, ORPO): objectives over preference pairs.
Floor 4: may import train, preference, infer and below; never another trainer."""
