"""The baselines of the NeuroSTORM comparisons: SwiFT on volumes; BrainNetCNN, BNT, BrainGNN and FC + linear on
connectivity matrices."""
