"""Generation edits (`CausalLMEditor`): make a language model continue a prompt with a new target, token by token."""
