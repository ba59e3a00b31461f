"""KFP v2 lightweight components, one per stage, thin typed wrappers over the core."""
