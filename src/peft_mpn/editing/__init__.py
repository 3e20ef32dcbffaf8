"""What every editing task shares: patch losses, the stop rule, the optimiser, the resumable stream, `MPNTrainer`,
the methods (MPN/T-Patcher patches and the FT-L and LoRA baselines), the shared metrics and the `Editor` loop."""
