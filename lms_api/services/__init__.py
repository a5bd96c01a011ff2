"""What each route does with Moodle: which functions, in which order, and how their answers become one shape.

Views parse input and call these; these call :class:`~lms_api.moodle.client.MoodleClient` and raise
:class:`~lms_api.errors.ApiError` for anything a caller must hear about.
"""
