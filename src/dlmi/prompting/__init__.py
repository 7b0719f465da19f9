"""Prompts in context: templates, data sets of input/output pairs, tuning one shared prompt."""
