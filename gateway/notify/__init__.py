"""The notification stage: routing, channels, escalation and the closed loop."""
