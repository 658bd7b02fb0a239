"""misc"""
