"""Many checkpoints at once: a training run's checkpoints (``discovery``), gating each as it
appears (``watch``), the run over the training step (``trend``), the zoo's detection matrix
(``matrix``), and the pytest health suite as one process per checkpoint (``suite``)."""
