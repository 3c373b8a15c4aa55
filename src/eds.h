/*-------------------------------------------------------------------------
 *
 * eds.h
 *		Declarations shared between the C files of the eds extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EDS_H
#define EDS_H

#include "postgres.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"

#include "compat.h"

/* settings (eds.c) */
extern char *eds_actor;
extern bool eds_allow_drop_with_data;

/* row_jsonb.c: a heap tuple as a jsonb object, attribute name -> value */
extern Jsonb *eds_tuple_to_jsonb(HeapTuple tuple, TupleDesc tupdesc);

/* drop_guard.c */
extern void eds_drop_guard_init(void);

#endif							/* EDS_H */
