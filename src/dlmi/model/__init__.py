"""Layer 1: the model made differentiable. Loading and freezing models, the Differentiable LM
(soft embeddings in, teacher-forced or Gumbel-Softmax rollouts out), the estimators, the
batched optimiser, FLOP counting. Imports only the foundation (errors, files, options)."""
