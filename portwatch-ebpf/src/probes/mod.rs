mod bind;
mod release;
mod state;
mod task_file;
mod doctor;
