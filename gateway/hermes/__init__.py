"""hermes"""
