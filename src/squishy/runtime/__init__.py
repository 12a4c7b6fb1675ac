"""Real backends: execution slots that run the plan's sessions in duty cycles over real executors."""
