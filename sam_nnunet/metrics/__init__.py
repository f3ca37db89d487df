"""Segmentation metrics (Dice, NSD, HD95) of predicted against reference folders: `sam-nnunet evaluate`."""
