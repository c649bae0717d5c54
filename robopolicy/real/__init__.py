"""Real robots without ROS: servo buses, robots, cameras, teleoperation."""
