"""Evaluation: metrics per subject with bootstrap CIs, per site and paired; retrieval metrics; run figures.

Plain NumPy, pandas and scikit-learn on prediction tables: nothing here trains or reads a store.
"""
