"""Offline-RL fine-tuning: rewards and returns over datasets, critics, and the PA-RL / CO-RFT / PTR methods."""
