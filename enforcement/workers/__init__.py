"""Workers: the relay (log → messages), the Dramatiq actors, deadlines, and how they run."""
