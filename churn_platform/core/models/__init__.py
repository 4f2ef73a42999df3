"""MLlib churn models: the kinds table, fitting with out-of-fold predictions, ensembles."""
