"""Training objectives, one module per task: what a batch is and how its loss and metrics are
computed. The trainer's loop, the execution mode and the run's life are shared by every task.

May import what engine.train may import."""
