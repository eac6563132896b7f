"""Train stage: pretraining and fine-tuning on packed shards (see issue #8). Only the recipe section exists yet."""
