"""Training a reward model with TRL, one module per job: settings, data, model, the TRL trainer (the only
module that imports TRL), resuming from checkpoints, publishing with its model card, and launching the
training worker. Knows nothing of Dagster."""
