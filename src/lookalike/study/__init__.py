"""The study's experiments: the timing table (bench), accuracy vs speed (tradeoff, tune), and scale."""
