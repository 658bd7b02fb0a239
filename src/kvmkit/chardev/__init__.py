"""chardev"""
