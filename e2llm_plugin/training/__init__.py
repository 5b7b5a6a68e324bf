"""Training: data (JSONL, the paper's two tasks), the loop (Accelerate, resumable), and checkpoint state."""
