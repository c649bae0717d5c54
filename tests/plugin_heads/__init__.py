"""A policy head defined outside robopolicy, for the open-registry tests.

Importing `tests.plugin_heads.configuration` registers the config; the head is found by convention in the sibling
`modeling` module. Nothing in robopolicy names it: train, sample(num_samples=N), RTC guidance, save and load must
work through the contract alone.
"""
