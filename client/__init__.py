"""Stage 5 and the user's side: call the deployed model over the KServe v2 protocol."""
