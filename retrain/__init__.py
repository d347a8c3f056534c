"""Re-tuning jobs, pure: build a data set, fine-tune, revise a prompt, evaluate a candidate.

Each job runs as its own process (``python -m retrain <kind> --spec job.json``) and never imports
``daemon``; it receives plain data and paths and writes its result beside its spec.
"""
