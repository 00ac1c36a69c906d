"""Hub remote code for the ALiBi model: configuration_alibi.py and modeling_alibi.py travel with checkpoints."""
