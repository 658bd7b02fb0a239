"""char"""
