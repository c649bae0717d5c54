"""robopolicy: datasets, policy heads, offline RL, sim evaluation and ROS-free deployment for robot learning."""

__version__ = "0.1.0"
