"""Prediction with prompts: nnU-Net's predictor with clicks and boxes, prompt files and their geometry, the
interactive session."""
