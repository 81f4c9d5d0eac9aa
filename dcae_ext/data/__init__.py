"""Data shared by training, evaluation and dataset encoding: image listing and robust loading,
latent / token shards and their readers."""
