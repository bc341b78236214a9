"""Hyperparameter tuning: local optuna trials and Katib Experiments."""
