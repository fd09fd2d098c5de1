"""The algorithm: rewards, advantage estimators, and the policy loss."""
