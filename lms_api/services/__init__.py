"""What each route does with Moodle: which functions, in which order, and how their answers become one shape.

Views hand them the read cache's front (:class:`~lms_api.cache.CachedMoodle`, the
:class:`~lms_api.moodle.client.Moodle` protocol), the validated input and what the route's rules take from the settings
and the caller (the offered course formats, the roles, the upload limit, the draft items' owners); these hold the input
to those rules, call Moodle through the function table's members and raise :class:`~lms_api.errors.ApiError` for
anything a caller must hear about.
"""
