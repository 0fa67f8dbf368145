"""Inference with both networks of a dual-network checkpoint, through nnU-Net's own predictor."""
