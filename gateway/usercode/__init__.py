"""usercode"""
