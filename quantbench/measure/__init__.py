"""Running a suite: the planner and runner (parent process), the per-variant worker (child
process), timing loops, the bare-loop reference and the Ray fleet executor."""
