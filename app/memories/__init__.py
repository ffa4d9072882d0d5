"""What the agent remembers for each owner, under the owner's control: list and delete."""
