"""Unlabelled data: raw layout, preprocessing with the labelled cases' plans, and the training stream."""
