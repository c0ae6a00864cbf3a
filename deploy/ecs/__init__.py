"""ECS: task and service definitions (JSON templates), their validation and the boto3 deploy script."""
