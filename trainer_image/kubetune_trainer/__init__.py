"""The fine-tuning program that runs inside the trainer image (and locally)."""
