"""What a student learns from: the teacher's outputs (stored once or computed
online), the id-keyed store of them, and the objectives that compare them with the
student's.
"""
