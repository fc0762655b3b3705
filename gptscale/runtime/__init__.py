"""What both training loops share: run start-up and the CLI error policy (run), launch and rendezvous rules
(dist), the DeepSpeed engine (engine), checkpoints (checkpoint, safeload), preemption (preempt), monitoring
sinks (monitor) and the test-only fault hooks (faults)."""
